"""Where results came from: the hash-chained audit trail, git state and the software environment.

Modules: `audit` (the trail and `audit.stage(...)`, which every stage runs inside), `environment`
(git state, versions, the software environment). Imports core and config only.
"""
