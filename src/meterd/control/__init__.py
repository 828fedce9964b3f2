"""Prepaid control (远程费控): tariffs, charging, the ledger, the prepaid policy and relay commands.

Pure parts (tariff, charging, policy, limits) are functions over the dataclasses of
:mod:`meterd.control.model` with time passed in; :mod:`meterd.control.state` keeps them in the
state database (commands and the audit log in :mod:`meterd.control.command_store`) and :mod:`meterd.control.commands` sends commands through the channels.
"""
