"""Relative connector paths: the SDK makes them absolute against the caller's directory; a server
handed one it cannot find says which directory it looked in."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from ragloom.client import absolute_connector_url
from ragloom.connectors.registry import ConnectorRegistry, open_connector
from ragloom.errors import NotFound


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("shop.db", "/home/me/proj/shop.db"),
        ("./data/shop.db", "/home/me/proj/data/shop.db"),
        ("../exports/", "/home/me/exports"),
        ("  exports/orders.csv ", "/home/me/proj/exports/orders.csv"),
        ("sqlite:///shop.db", "sqlite:////home/me/proj/shop.db"),
        ("sqlite:///data/shop.db?mode=ro", "sqlite:////home/me/proj/data/shop.db?mode=ro"),
        ("sqlite+pysqlite:///./shop.db", "sqlite+pysqlite:////home/me/proj/shop.db"),
        ("file://exports/a.csv", "file:///home/me/proj/exports/a.csv"),
        # already absolute, or not a local file: sent as given
        ("/srv/data/shop.db", "/srv/data/shop.db"),
        ("sqlite:////srv/data/shop.db", "sqlite:////srv/data/shop.db"),
        ("file:///srv/exports/", "file:///srv/exports/"),
        ("sqlite://", "sqlite://"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql://reader:pw@db.internal:5432/sales", "postgresql://reader:pw@db.internal:5432/sales"),
        ("mysql://root@127.0.0.1:3306/crm", "mysql://root@127.0.0.1:3306/crm"),
        ("mariadb+pymysql://root@host/db", "mariadb+pymysql://root@host/db"),
    ],
)
def test_relative_paths_become_absolute_against_the_callers_directory(url: str, expected: str) -> None:
    assert absolute_connector_url(url, cwd="/home/me/proj") == expected


def test_default_directory_is_the_process_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_connector_url("./shop.db") == str(tmp_path / "shop.db")
    assert absolute_connector_url("~/shop.db") == os.path.expanduser("~/shop.db")


def test_server_error_names_its_directory_for_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("missing.db", "./exports/orders.csv", "sqlite:///data/missing.db", "file://missing/"):
        with pytest.raises(NotFound) as err:
            open_connector("c", url)
        assert "server's working directory" in str(err.value) and str(tmp_path) in str(err.value), url
    # an absolute path says nothing about directories: none was involved
    with pytest.raises(NotFound) as err:
        open_connector("c", str(tmp_path / "missing.db"))
    assert "working directory" not in str(err.value)
    with pytest.raises(NotFound) as err:
        open_connector("c", f"sqlite:///{tmp_path / 'missing.db'}")
    assert "working directory" not in str(err.value)


def test_relative_paths_that_exist_on_the_server_still_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with sqlite3.connect(tmp_path / "shop.db") as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
    monkeypatch.chdir(tmp_path)
    registry = ConnectorRegistry()
    for name, url in (("a", "shop.db"), ("b", "sqlite:///shop.db")):
        assert [t.name for t in registry.register(name, url).schema().tables] == ["orders"]
    registry.close()
