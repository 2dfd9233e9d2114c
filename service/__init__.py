"""A durable, signed, idempotent HubSpot webhook receiver that mirrors the CRM in Postgres."""
