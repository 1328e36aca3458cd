"""NFSv3 for file shares: the shares of the S3 store, mountable with standard NFS clients.

Modules: :mod:`.xdr` and :mod:`.rpc` (sans-IO XDR and ONC RPC over TCP record marking),
:mod:`.nfs3` (NFSv3, MOUNT v3 and PMAP wire formats), :mod:`.handles` (stable, MAC'd file
handles), :mod:`.staging` (UNSTABLE writes until COMMIT), :mod:`.ops` (what each procedure does,
over :mod:`tunnelmesh_s3.shareaccess`), :mod:`.server` (the asyncio driver).
"""
