"""Inbound webhooks: signature schemes (signatures.py), the ingest flow (ingest.py), the
POST /webhooks/<connection> route (routes.py) and the admin Deliveries page (views.py)."""
