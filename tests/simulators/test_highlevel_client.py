"""The HighLevel simulator against HighLevel's official Python SDK (`gohighlevel-api-client`,
package `highlevel`), so the fake cannot drift from what that client sends and expects.

The SDK takes no base-URL argument: its base URL is the class attribute
`HighLevel.BASE_URL`, read when a client is built, so a subclass that overrides it points
the SDK at the simulator and leaves every request it makes as it is."""
import asyncio

import pytest
from highlevel import HighLevel
from highlevel.error import GHLError

from tests.simulators.highlevel import HighLevelAPI


def _sdk(server, token="pit-sim-token"):
    class AtTheSimulator(HighLevel):
        BASE_URL = server.url

    return AtTheSimulator(private_integration_token=token)


def test_the_official_sdk_pages_orders_reads_details_and_lists_products(serve):
    api = HighLevelAPI(orders=12, products=3, seed=5)
    server = serve(api)
    sdk = _sdk(server)
    location = api.location_id

    async def read_everything():
        listed, offset = [], 0
        while True:
            page = await sdk.payments.list_orders(alt_id=location, location_id=location, limit=5, offset=offset)
            assert page["totalCount"] == 12
            listed += page["data"]
            offset += 5
            if offset >= page["totalCount"]:
                break
        details = [await sdk.payments.get_order_by_id(order_id=o["_id"], alt_id=location, location_id=location)
                   for o in listed[:3]]
        # The SDK's generated name for GET /products/ is list_invoices.
        products = await sdk.products.list_invoices(location_id=location, limit=10, offset=0)
        return listed, details, products

    listed, details, products = asyncio.run(read_everything())
    assert [o["_id"] for o in listed] == list(api.orders)
    assert details == [api.orders[o["_id"]] for o in listed[:3]]
    assert all(d["items"] and d["items"][0]["product"]["_id"] in api.products for d in details)
    assert [p["_id"] for p in products["products"]] == list(api.products)
    assert products["total"] == [{"total": 3}]
    sent = server.log.entries("/payments/orders")[0]
    assert sent.headers.get("Version") and sent.headers["Authorization"] == "Bearer pit-sim-token"
    assert api.violations == 0


def test_the_official_sdk_reads_the_simulators_errors(serve):
    api = HighLevelAPI(orders=2, products=2, seed=6)
    server = serve(api)

    async def with_wrong(sdk, **where):
        return await sdk.payments.list_orders(**where)

    with pytest.raises(GHLError) as refused:
        asyncio.run(with_wrong(_sdk(server, token="not-a-token"), alt_id=api.location_id, location_id=api.location_id))
    assert refused.value.status_code == 401
    with pytest.raises(GHLError) as forbidden:
        asyncio.run(with_wrong(_sdk(server), alt_id="another-location", location_id="another-location"))
    assert forbidden.value.status_code == 403
