"""Remote management over the uplink's MQTT connection (docs/remote.md).

Pure cores, no I/O and no clock reads (time is passed in):

- :mod:`gateway.remote.wire`: topics, result codes, the signed envelope (HMAC-SHA256);
- :mod:`gateway.remote.desired`: the desired-configuration document and the diff of two
  configs into keys that change live and keys that need a restart;
- :mod:`gateway.remote.commands`: the request codec, the bounded request-id window,
  expiry, the allow-list;
- :mod:`gateway.remote.rollback`: the apply / confirm / roll-back state machine.

The thin shells: :mod:`gateway.remote.files` (atomic writes, the persisted state),
:mod:`gateway.remote.startup` (roll back before the agent loads its config) and
:mod:`gateway.remote.shell` (subscribes on the uplink's connection, answers).
"""
