"""Platform of the Health Information Network.

``mesh.runtime`` runs inside every service process; ``mesh.network`` runs the
network of services on one machine.
"""
