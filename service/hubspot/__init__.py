"""Everything that talks to HubSpot's API; the only package importing hubspot-api-client."""
