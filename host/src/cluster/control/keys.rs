//! The root key ring and revocations in the cluster (`keys/ID`, `revoked/ID`): every node
//! adopts the same root keys and records every revocation in its own engine.
//!
//! Invariants: a root key id is written once (put-if-absent: the first writer wins, so every
//! node ends with the same ring); a revocation is recorded here as soon as it is published,
//! and holds while etcd is away.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use crate::cluster::follow::Listed;
use crate::cluster::{Cluster, ClusterError};
use crate::etcd::{EtcdError, Retry};

impl Cluster {
    /// Publishes a revocation, then records it here at once.
    pub async fn revoke(&self, token_id: &str) -> Result<(), ClusterError> {
        let key = format!("/ledge/revoked/{token_id}");
        self.etcd.put(key.clone(), b"revoked".to_vec(), None).await?;
        self.revoke_locally(token_id).await;
        Ok(())
    }

    /// Refuses a token revoked in etcd on this node at once, and records the revocation in its
    /// engine too (so it holds across a restart while etcd is away). The engine's copy is a
    /// cache: when it cannot be written, the node still refuses the token.
    pub(in crate::cluster) async fn revoke_locally(&self, token_id: &str) {
        self.authority.revoked_in_cluster(token_id);
        let authority = self.authority.clone();
        let id = token_id.to_string();
        let outcome =
            tokio::task::spawn_blocking(move || if authority.is_revoked(&id) { Ok(()) } else { authority.revoke(&id) })
                .await;
        if let Ok(Err(error)) | Err(error) = outcome.map_err(|e| e.to_string()) {
            tracing::error!(token_id, %error, "could not record a revocation");
        }
    }

    /// Adopts the cluster's root keys, and publishes this node's own (put-if-absent: the first
    /// writer of an id wins, so every node ends with the same ring).
    pub(in crate::cluster) async fn sync_keys(&self, entries: &[Listed]) -> Result<(), EtcdError> {
        for entry in entries {
            self.adopt_key(&entry.name, &entry.value);
        }
        let local =
            crate::access::tokens::key_secrets(&self.data_dir).map_err(|e| EtcdError::Refused(e.to_string()))?;
        for (id, secret) in local.into_iter().filter(|(id, _)| !entries.iter().any(|listed| listed.name == *id)) {
            let key = format!("/ledge/keys/{id}");
            let txn = Txn::new()
                .when(vec![Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then(vec![TxnOp::put(key.clone(), secret.into_bytes(), None::<PutOptions>)]);
            self.etcd.txn(Retry::Any, txn.clone()).await?;
        }
        Ok(())
    }

    pub(in crate::cluster) fn adopt_key(&self, id: &str, secret: &[u8]) {
        let secret = String::from_utf8_lossy(secret);
        if let Err(error) = self.authority.adopt_key(&self.data_dir, id, &secret) {
            tracing::error!(key_id = id, %error, "cannot adopt the cluster's root key");
        }
    }
}
