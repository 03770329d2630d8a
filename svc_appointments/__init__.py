"""Scheduling service: practitioners, schedules, appointments and admissions."""
