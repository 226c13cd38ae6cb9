"""Code shared by the server and the client daemons."""
