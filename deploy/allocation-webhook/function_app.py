"""Azure Functions (Python v2 programming model) host for the DPS custom allocation webhook.

Every HTTP request goes to the ASGI app in client_app/allocation_webhook.py; the route DPS calls is
POST /api/allocate. AuthLevel.FUNCTION: DPS sends the function key (`?code=…` in the webhookUrl, which the
portal fills in). Deploy: README.md in this folder.
"""

import azure.functions as func

from client_app.allocation_webhook import app as allocation_app

app = func.AsgiFunctionApp(app=allocation_app, http_auth_level=func.AuthLevel.FUNCTION)
