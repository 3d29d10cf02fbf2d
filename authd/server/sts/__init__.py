"""STS: the client that asks who signed a token, the guard, the identity cache."""
