"""``vitadapter serve``: the model behind an HTTP API, with a small web page.

Needs the ``serve`` extra (``pip install 'vitadapter[serve]'``: FastAPI, uvicorn,
python-multipart). Nothing outside this package imports it, so ``import vitadapter`` works
without the extra. The app factory is :func:`vitadapter.serve.app.create_app`.
"""
