"""Storage Commitment Push Model SCP (PS3.4 Annex J): the node tells a sender which instances it keeps.

A sender (scanner, PACS, Orthanc) that has pushed a slide asks with N-ACTION "Request Storage
Commitment" (PS3.4 J.3.2) whether the node has taken responsibility for a list of SOP Instances;
the node answers the N-ACTION at once and later reports the outcome with N-EVENT-REPORT (J.3.3),
on the same association when the requester keeps it open, otherwise on a new association to the
address configured for its AE title (`commitment_peers`). The request is also the sender's
"that was the whole slide" signal for the completeness rules.

Modules, one step each:

* :mod:`~scp.commitment.request`: parse and validate the N-ACTION (pure);
* :mod:`~scp.commitment.check`: which referenced instances are committed, from the node's state;
* :mod:`~scp.commitment.report`: the N-EVENT-REPORT datasets (pure);
* :mod:`~scp.commitment.peers`: the `AET=host:port` table of reply addresses;
* :mod:`~scp.commitment.store`: pending commitments in SQLite (they survive a restart);
* :mod:`~scp.commitment.sender`: delivery on the same or a new association (role selection);
* :mod:`~scp.commitment.service`: the single thread that owns the store, checks, delivers, retries.
"""

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
"""Storage Commitment Push Model SOP Class (PS3.4 J.3, PS3.6 Annex A)."""
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
"""Its well-known SOP Instance (PS3.4 J.3.5): the Requested/Affected SOP Instance of N-ACTION and N-EVENT-REPORT."""
