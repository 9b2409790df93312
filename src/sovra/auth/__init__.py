"""Identity and access: who is calling (OIDC tokens, API tokens), what they may do, the audit trail."""
