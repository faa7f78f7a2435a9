"""The Zoom simulator against a published Zoom client, `zoomus` (base URL and token URL
settable), and against the token request in the form Zoom documents (grant_type and
account_id in the query string, as `zoom-python-client` sends it): the fake cannot drift
from what real clients send and expect."""
import requests
from zoomus import ZoomClient

from tests.simulators.zoom import ZoomAPI


def _client(api, server):
    return ZoomClient(api.client_id, api.client_secret, api.account_id, base_uri=f"{server.url}/v2",
                      oauth_uri=f"{server.url}/oauth/token")


def test_zoomus_pages_through_webinars_and_reads_one_with_its_registrants(serve):
    api = ZoomAPI(webinars=45, seed=7, registrants=(1, 3))
    server = serve(api)
    client = _client(api, server)  # asks the token endpoint (form body) as it is built

    listed, token, pages = [], None, 0
    while True:
        answer = client.webinar.list(user_id="me", page_size=20, **({"next_page_token": token} if token else {}))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["total_records"] == 45 and body["page_size"] == 20
        listed += body["webinars"]
        pages += 1
        token = body["next_page_token"]
        if not token:
            break
    assert pages == 3 and listed == list(api.webinars.values())

    webinar_id = listed[0]["id"]
    assert client.webinar.get(id=webinar_id).json() == api.webinars[webinar_id]
    registrants = client.webinar.get_registrants(id=webinar_id).json()
    assert registrants["registrants"] == api.registrants[webinar_id] and registrants["total_records"] >= 1
    missing = client.webinar.get(id=1)
    assert missing.status_code == 404 and missing.json()["code"] == 3001
    assert api.token_requests >= 1 and api.violations == 0


def test_zoomus_sees_an_expired_token_as_zoom_answers_it_and_renews_it(serve):
    api = ZoomAPI(webinars=3, seed=8)
    server = serve(api)
    client = _client(api, server)
    api.expire_tokens()
    refused = client.webinar.list(user_id="me")
    assert refused.status_code == 401 and refused.json() == {"code": 124, "message": "Access token is expired."}
    client.refresh_token()  # what a zoomus user does on Zoom's 401
    assert client.webinar.list(user_id="me").json()["total_records"] == 3
    assert api.token_requests == 2


def test_token_request_with_the_grant_in_the_query_string_or_the_body(serve):
    api = ZoomAPI(webinars=1)
    server = serve(api)
    url, auth = f"{server.url}/oauth/token", (api.client_id, api.client_secret)
    grant = {"grant_type": "account_credentials", "account_id": api.account_id}
    in_query = requests.post(url, params=grant, auth=auth, timeout=10)
    in_body = requests.post(url, data=grant, auth=auth, timeout=10)
    for answer in (in_query, in_body):
        assert answer.status_code == 200 and answer.json()["token_type"] == "bearer"
        assert api.tokens.valid(answer.json()["access_token"])
    wrong_account = requests.post(url, params=dict(grant, account_id="someone-else"), auth=auth, timeout=10)
    assert wrong_account.status_code == 400 and wrong_account.json()["error"] == "invalid_request"
    assert requests.post(url, auth=auth, timeout=10).status_code == 400  # no grant at all
