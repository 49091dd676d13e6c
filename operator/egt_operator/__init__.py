"""The EGT operator: the EGTRun custom resource and the Kubernetes objects each stage runs as.

The package lives in the repository's ``operator/`` folder but imports as ``egt_operator``: a
top-level ``operator`` package would shadow the standard library's. ``crd`` builds the
CustomResourceDefinition from ``egt.spec``; ``children`` renders a stage's objects as pure data.
"""
