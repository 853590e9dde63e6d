"""The controller-side service: lifecycle notifications -> the instance database."""
