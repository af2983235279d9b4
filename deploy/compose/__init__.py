"""Running the processes one per container (docker-compose, Kubernetes): `inzwa serve`/`health`."""
