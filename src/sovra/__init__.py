"""Sovra: a compute control plane for sovereign IaaS clouds."""

__version__ = "0.1.0"
