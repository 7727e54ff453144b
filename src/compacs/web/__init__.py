"""The admin's window: a REST API (JSON, OpenAPI) and server-rendered pages."""
