"""Hosts, flavors, the scheduler and server workflows."""
