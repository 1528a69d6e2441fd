"""The web console: server-rendered pages under ``/ui/`` over the same
service as the REST API, in the same process and on the same port.

Reading works with JavaScript off (every page is HTML from Jinja templates,
escaped by default); with it on, a job's page polls its live part and the
action buttons call the REST API (or the console's few routes under
``/ui/api/``) with the API token kept for the tab.  Scripts and styles are
served from the package (``serve/static/ui``): no CDN, no build step.
"""

from .pages import mount

__all__ = ["mount"]
