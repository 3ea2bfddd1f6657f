"""The capture importer: a provider folder from a browser capture (cURL or HAR); never run by the service."""
