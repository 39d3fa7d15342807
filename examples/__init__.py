"""Example domains: each is one user's domain, reached by the platform only as configured.

``examples.helpdesk`` is the embedded default that ``make demo`` runs. Nothing under
``loopwright/``, ``tasks/``, ``flows/`` or ``models/`` imports from here
(``tests/test_import_contract.py``).
"""
