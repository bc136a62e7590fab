"""Many customers: a directory of customers, each with its own workspaces and service principal profile.

``directory`` holds the customer value and the table it may live in; ``config`` reads the
POWERBI_CUSTOMER* settings; ``access`` finds the signed-in user's customer for each request.
"""
