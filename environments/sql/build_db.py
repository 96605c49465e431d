"""Build ``shop.sqlite``, the database the questions are asked about: ``python build_db.py``.

The data is drawn from a fixed seed, so the file is rebuilt identically; it is committed, and the
environment only ever opens it read-only.
"""

from __future__ import annotations

import random
import sqlite3
from datetime import date, timedelta
from pathlib import Path

PATH = Path(__file__).with_name("shop.sqlite")

SCHEMA = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    city TEXT NOT NULL,
    joined_on TEXT NOT NULL            -- ISO date, YYYY-MM-DD
);
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    category TEXT NOT NULL,            -- books, garden, kitchen or toys
    price REAL NOT NULL                -- in euros
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    ordered_on TEXT NOT NULL,          -- ISO date, YYYY-MM-DD
    status TEXT NOT NULL               -- shipped, pending or cancelled
);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id),
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
"""

FIRST = ["Ana", "Bruno", "Carla", "David", "Elena", "Filipe", "Greta", "Hugo", "Ines", "Jonas", "Klara", "Luis",
         "Marta", "Nuno", "Olga", "Pedro", "Rita", "Sofia", "Tomas", "Vera"]
LAST = ["Almeida", "Berg", "Costa", "Duarte", "Ferreira", "Garcia", "Klein", "Moreau", "Rossi", "Silva"]
CITIES = ["Lisbon", "Porto", "Madrid", "Paris", "Berlin", "Rome"]
PRODUCTS = [
    ("books", "Atlas of Rivers", 34.50), ("books", "Baking Basics", 19.90), ("books", "Chess Openings", 24.00),
    ("books", "Deep Sea Life", 29.95), ("books", "Essays on Light", 15.50), ("books", "Field Guide to Birds", 27.00),
    ("garden", "Bird Feeder", 22.00), ("garden", "Compost Bin", 64.90), ("garden", "Garden Hose 25m", 39.99),
    ("garden", "Pruning Shears", 18.75), ("garden", "Seed Starter Kit", 12.40), ("garden", "Watering Can", 16.20),
    ("kitchen", "Cast Iron Pan", 45.00), ("kitchen", "Chef Knife", 59.00), ("kitchen", "Coffee Grinder", 49.50),
    ("kitchen", "Mixing Bowls", 21.30), ("kitchen", "Salad Spinner", 17.80), ("kitchen", "Teapot", 26.60),
    ("toys", "Building Blocks", 31.00), ("toys", "Jigsaw 1000", 14.99), ("toys", "Kite", 11.50),
    ("toys", "Marble Run", 42.00), ("toys", "Puppet Theatre", 55.25), ("toys", "Wooden Train", 37.80),
]
NEVER_ORDERED = 3   # the last products are never ordered
NEVER_ORDERING = 6  # the last customers never order


def build(path: Path = PATH) -> None:
    rng = random.Random(2024)
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    names = rng.sample([f"{f} {l}" for f in FIRST for l in LAST], 40)
    customers = [
        (i, name, rng.choice(CITIES), (date(2021, 1, 1) + timedelta(days=rng.randrange(4 * 365))).isoformat())
        for i, name in enumerate(names, 1)
    ]
    products = [(i, name, category, price) for i, (category, name, price) in enumerate(PRODUCTS, 1)]
    orders, items = [], []
    for order_id in range(1, 151):
        customer = rng.randint(1, len(customers) - NEVER_ORDERING)
        day = (date(2023, 1, 1) + timedelta(days=rng.randrange(731))).isoformat()
        status = rng.choices(["shipped", "pending", "cancelled"], weights=[70, 15, 15])[0]
        orders.append((order_id, customer, day, status))
        for product in rng.sample(range(1, len(products) - NEVER_ORDERED + 1), rng.randint(1, 5)):
            items.append((order_id, product, rng.randint(1, 4)))
    db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", customers)
    db.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", products)
    db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", orders)
    db.executemany("INSERT INTO order_items VALUES (?, ?, ?)", items)
    db.commit()
    db.execute("VACUUM")
    db.close()


if __name__ == "__main__":
    build()
    print(f"wrote {PATH}")
