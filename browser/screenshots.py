"""Screenshots of the pages during a sale, for the README (not a test).

    CHECKLINE_SCREENSHOTS=1 scripts/browser-test.sh screenshots.py

writes docs/images/storefront.png and docs/images/console.png: a sale runs
in the background (buyers on threads, some holding their units), a buyer
holds a cart in the storefront, and both pages are captured mid-sale.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
import uuid

import pytest
from playwright.sync_api import expect

from conftest import ROOT, SECRET

OUT = ROOT / "docs" / "images"


def token(sub: str, role: str) -> str:
    """An HS256 token, minted here for speed (hundreds of buyers)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": sub, "roles": [role], "exp": int(time.time()) + 3600}).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


@pytest.mark.skipif(not os.environ.get("CHECKLINE_SCREENSHOTS"), reason="set CHECKLINE_SCREENSHOTS=1")
def test_screenshots(system, open_page):
    catalog = [
        ("Flash phone", 3000, 19900),
        ("Wireless earbuds", 5000, 5900),
        ("Fast charger", 8000, 1900),
        ("Phone case", 4000, 1500),
        ("Smartwatch", 150, 14900),
        ("Tablet", 8, 32900),
    ]
    products = [system.create_product(name, stock, price) for name, stock, price in catalog]
    stop = threading.Event()

    def buyer(n: int):
        sub = f"crowd-{n}"
        tok = token(sub, "customer")
        i = 0
        while not stop.is_set():
            product = products[(n + i) % len(products)]
            body = {"product_id": product["id"], "quantity": 1}
            if product["name"] == "Tablet":
                body = {"lines": [{"product_id": product["id"], "quantity": 1}], "reserve_secs": 600}
            system.request("POST", "/v1/orders", token=tok, body=body, headers={"Idempotency-Key": f"{sub}-{i}"})
            i += 1
            time.sleep(0.05)

    threads = [threading.Thread(target=buyer, args=(n,), daemon=True) for n in range(24)]
    for t in threads:
        t.start()
    try:
        buyer_token = token(f"shopper-{uuid.uuid4().hex[:6]}", "customer")
        store = open_page(f"{system.url}/#token={buyer_token}").page
        expect(store.locator("li.card")).to_have_count(len(products), timeout=15_000)
        for product in products[1:3]:
            store.locator(f'li.card[data-product-id="{product["id"]}"]').get_by_role(
                "button", name=f'Add to cart: {product["name"]}'
            ).click()
        store.get_by_role("button", name="Check out").click()
        expect(store.locator("#order-panel")).to_have_attribute("data-status", "reserved", timeout=20_000)
        time.sleep(4)
        OUT.mkdir(parents=True, exist_ok=True)
        store.screenshot(path=str(OUT / "storefront.png"), full_page=True)

        console = open_page(f"{system.url}/ops#token={system.admin}").page
        expect(console.locator("#partitions tbody tr").first).to_be_visible()
        time.sleep(10)
        console.screenshot(path=str(OUT / "console.png"), full_page=True)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
