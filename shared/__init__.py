"""The domain of the Power BI embed-token function.

One module per concept: ``settings`` (app settings, validated once), ``clock``
(time and deadlines), ``errors`` (the exception tree), ``http`` (the shared
session, retries and timeouts), ``entra`` (Entra ID tokens through MSAL),
``powerbi`` (the Power BI REST calls), ``embed`` (policy and cache) and
``responses`` (HTTP answers). ``function_app.py`` only wires them to routes.
"""
