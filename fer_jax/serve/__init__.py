"""fer_jax over HTTP: `python -m fer_jax.serve --pretrained` (__main__.py), the FastAPI app
(app.py), batching across requests (batching.py), the page (static/) and the load test that
`python -m fer_jax.bench --serve` runs (load.py). Docs: docs/serve.md.
"""
