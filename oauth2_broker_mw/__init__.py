"""oauth2-broker-mw: a multi-tenant OAuth 2.0 token broker."""
