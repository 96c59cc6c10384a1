-- A tiny shop for `make demo`'s text-to-SQL step (built into a SQLite file at demo time).
CREATE TABLE customers (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  country TEXT NOT NULL,
  signup_date TEXT NOT NULL
);
CREATE TABLE products (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  category TEXT NOT NULL,
  price REAL NOT NULL
);
CREATE TABLE orders (
  id INTEGER PRIMARY KEY,
  customer_id INTEGER NOT NULL REFERENCES customers(id),
  product_id INTEGER NOT NULL REFERENCES products(id),
  quantity INTEGER NOT NULL,
  order_date TEXT NOT NULL
);
INSERT INTO customers VALUES
  (1, 'Ada Lovelace', 'United Kingdom', '2024-01-15'),
  (2, 'Grace Hopper', 'United States', '2024-02-03'),
  (3, 'Alan Turing', 'United Kingdom', '2024-02-20'),
  (4, 'Katherine Johnson', 'United States', '2024-03-11'),
  (5, 'Marie Curie', 'France', '2024-03-30'),
  (6, 'Emmy Noether', 'Germany', '2024-04-18'),
  (7, 'Hedy Lamarr', 'Austria', '2024-05-02'),
  (8, 'Claude Shannon', 'United States', '2024-05-27');
INSERT INTO products VALUES
  (1, 'Mechanical keyboard', 'hardware', 89.0),
  (2, 'USB-C hub', 'hardware', 39.5),
  (3, 'Noise-cancelling headphones', 'audio', 199.0),
  (4, 'Desk microphone', 'audio', 75.0),
  (5, 'Python cookbook', 'books', 42.0),
  (6, 'SQL pocket guide', 'books', 18.0);
INSERT INTO orders VALUES
  (1, 1, 5, 1, '2024-06-01'),
  (2, 2, 1, 1, '2024-06-03'),
  (3, 2, 6, 2, '2024-06-03'),
  (4, 3, 3, 1, '2024-06-10'),
  (5, 4, 2, 3, '2024-06-12'),
  (6, 5, 5, 1, '2024-06-15'),
  (7, 6, 4, 1, '2024-07-01'),
  (8, 7, 3, 1, '2024-07-04'),
  (9, 8, 1, 2, '2024-07-09'),
  (10, 1, 6, 1, '2024-07-21'),
  (11, 3, 2, 1, '2024-08-02'),
  (12, 8, 3, 1, '2024-08-14');
