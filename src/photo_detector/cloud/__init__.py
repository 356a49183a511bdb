"""Google Cloud adapters (Cloud Run, Vertex AI, Cloud Storage); imported only by the commands that need them."""
