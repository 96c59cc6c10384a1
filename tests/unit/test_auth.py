"""services/auth.py without a server: the scope map against the protos, key files, reloads,
the exposure check, `ragloom keys add`, and the SDK's channel security arguments."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from ragloom.cli import main
from ragloom.client.channel import auth_metadata, channel_credentials
from ragloom.config import Settings
from ragloom.errors import InvalidArgument
from ragloom.services import auth
from ragloom.services._proto import generation_pb2, rag_pb2, retrieval_pb2, tables_pb2


def test_every_rpc_has_a_scope_and_no_scope_names_a_missing_rpc() -> None:
    rpcs = {
        f"/{service.full_name}/{method.name}"
        for module in (generation_pb2, rag_pb2, retrieval_pb2, tables_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert rpcs == set(auth.METHOD_SCOPES)
    assert set(auth.METHOD_SCOPES.values()) <= {*auth.SCOPES, auth.ANY_KEY}
    # creating and deleting collections and connectors is admin's (the rule)
    admin = {m.rsplit("/", 1)[1] for m, s in auth.METHOD_SCOPES.items() if s == "admin"}
    assert admin == {"CreateCollection", "DeleteCollection", "RegisterConnector", "RemoveConnector"}


def _write(path: Path, keys: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps({"keys": keys}))
    return path


def _entry(name: str, key: str, scopes: list[str]) -> dict[str, object]:
    return {"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": scopes}


def test_key_file_lookup_by_sha256(tmp_path: Path) -> None:
    ring = auth.load_key_file(_write(tmp_path / "k.json", [_entry("app", "s3cret", ["generate", "retrieve"])]))
    found = ring.lookup("s3cret")
    assert found is not None and found.name == "app" and found.scopes == {"generate", "retrieve"}
    assert ring.lookup("s3cret ") is None and ring.lookup("") is None


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "cannot be parsed"),
        (json.dumps({"keys": [{"name": "a", "sha256": "ab", "scopes": ["generate"]}]}), "malformed"),
        (json.dumps({"keys": [_entry("a", "k", ["root"])]}), "malformed"),
        (json.dumps({"keys": [_entry("a", "k", ["ask"]), _entry("a", "j", ["ask"])]}), "appears twice"),
        (json.dumps({"keys": [_entry("a", "k", ["ask"]), _entry("b", "k", ["ask"])]}), "same sha256"),
    ],
)
def test_bad_key_files_are_refused(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "k.json"
    path.write_text(content)
    with pytest.raises(InvalidArgument, match=needle):
        auth.load_key_file(path)


def test_yaml_key_file(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    path = tmp_path / "k.yaml"
    path.write_text(f"keys:\n  - name: app\n    sha256: {digest}\n    scopes: [ask]\n")
    assert auth.load_key_file(path).lookup("k") is not None


def test_reload_logs_changes_and_keeps_old_keys_on_a_bad_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "k.json", [_entry("a", "ka", ["ask"]), _entry("b", "kb", ["ask"])])
    keys = auth.ApiKeys(path)
    _write(path, [_entry("a", "ka", ["ask", "tables"]), _entry("c", "kc", ["ask"])])
    with caplog.at_level(logging.INFO, logger="ragloom.services.auth"):
        assert keys.reload()
    assert "added ['c']; removed ['b']; changed ['a']" in caplog.text
    assert keys.ring.lookup("kb") is None and keys.ring.lookup("kc") is not None
    path.write_text("{broken")
    with caplog.at_level(logging.INFO, logger="ragloom.services.auth"):
        assert not keys.reload()
    assert "not reloaded" in caplog.text
    assert keys.ring.lookup("kc") is not None  # the old keys stay


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_needs_nothing(host: str) -> None:
    auth.check_exposure(Settings(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10"])
def test_beyond_loopback_refuses_without_tls_and_keys(host: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"TLS \(--tls-cert F --tls-key F\) and API keys.*--insecure"):
        auth.check_exposure(Settings(host=host))
    # one of the two is not enough, and the message names what is missing
    with pytest.raises(InvalidArgument, match=r"without API keys \(--api-keys FILE\)"):
        auth.check_exposure(Settings(host=host, tls_cert=tmp_path / "c", tls_key=tmp_path / "k"))
    auth.check_exposure(Settings(host=host, insecure=True))
    auth.check_exposure(Settings(host=host, tls_cert=tmp_path / "c", tls_key=tmp_path / "k", api_keys=tmp_path / "a"))


def test_tls_settings_must_be_complete(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="--tls-key is missing"):
        auth.server_credentials(Settings(tls_cert=tmp_path / "c"))
    with pytest.raises(InvalidArgument, match="mTLS is TLS first"):
        auth.server_credentials(Settings(tls_client_ca=tmp_path / "ca"))
    (tmp_path / "c").write_text("not a certificate")
    (tmp_path / "k").write_text("-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(InvalidArgument, match="is not PEM"):
        auth.server_credentials(Settings(tls_cert=tmp_path / "c", tls_key=tmp_path / "k"))
    with pytest.raises(InvalidArgument, match="cannot read"):
        auth.server_credentials(Settings(tls_cert=tmp_path / "missing", tls_key=tmp_path / "k"))
    assert auth.server_credentials(Settings()) is None


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGLOOM_TLS_CERT", str(tmp_path / "c"))
    monkeypatch.setenv("RAGLOOM_API_KEYS", str(tmp_path / "k.json"))
    monkeypatch.setenv("RAGLOOM_REFLECTION", "false")
    s = Settings()
    assert s.tls_cert == tmp_path / "c" and s.api_keys == tmp_path / "k.json" and s.reflection is False


def test_keys_add_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    assert main(["keys", "add", "app", "--scopes", "generate,retrieve", "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert main(["keys", "add", "ops", "--scopes", "admin", "--file", str(path)]) == 0
    ops_key = capsys.readouterr().out.strip()
    ring = auth.load_key_file(path)
    assert key not in path.read_text()  # only its hash is stored
    app, ops = ring.lookup(key), ring.lookup(ops_key)
    assert app is not None and app.name == "app" and app.scopes == {"generate", "retrieve"}
    assert ops is not None and ops.scopes == {"admin"}
    assert main(["keys", "add", "app", "--scopes", "ask", "--file", str(path)]) == 1
    assert "already has a key named 'app'" in capsys.readouterr().err
    assert main(["keys", "add", "x", "--scopes", "root", "--file", str(path)]) == 1
    assert "unknown scope(s) root" in capsys.readouterr().err


def test_sdk_channel_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert channel_credentials(None, None, None, None) is None
    with pytest.raises(InvalidArgument, match="both client_cert and client_key"):
        channel_credentials(True, None, tmp_path / "c", None)
    with pytest.raises(InvalidArgument, match="cannot read the root certificates"):
        channel_credentials(None, tmp_path / "missing.pem", None, None)
    assert auth_metadata("k1") == (("authorization", "Bearer k1"),)
    assert auth_metadata(None) == ()
    with pytest.raises(InvalidArgument, match="api_key"):
        auth_metadata("two words")
    from ragloom.client import Client

    monkeypatch.setenv("RAGLOOM_API_KEY", "from-env")
    with Client("127.0.0.1:1") as c:
        assert c._metadata == (("authorization", "Bearer from-env"),)
    with Client("127.0.0.1:1", api_key="given") as c:
        assert c._metadata == (("authorization", "Bearer given"),)
