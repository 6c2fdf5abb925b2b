"""Reprise: shared runtime for the three services and the generated protobuf code.

Generated modules live under ``reprise/<service>/v1/`` (``make protos``); the
hand-written runtime shared by every service lives in :mod:`reprise.rpc`.
"""
