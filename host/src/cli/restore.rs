//! `ledge restore FILE --data-dir DIR`: a new data dir from a `ledge backup` archive, offline.

use std::path::PathBuf;

/// `ledge restore FILE --data-dir DIR`: verifies the archive, then builds DIR from it.
pub async fn restore(file: PathBuf, data_dir: PathBuf) -> anyhow::Result<()> {
    crate::storage::keep_new_files_private();
    let (archive, target) = (file.clone(), data_dir.clone());
    let manifest = tokio::task::spawn_blocking(move || crate::backup::restore(&archive, &target))
        .await?
        .map_err(|error| anyhow::anyhow!("cannot restore {}: {error}", file.display()))?;
    println!(
        "restored {} functions and the key-value data (stamp {}) from a backup made by ledge {} at {} into {}",
        manifest.functions().len(),
        manifest.kv_stamp,
        manifest.ledge_version,
        manifest.created_at,
        data_dir.display()
    );
    println!(
        "start it with `ledge serve --data-dir {}`: it is a copy of the node (same keys), so the original's tokens work on it",
        data_dir.display()
    );
    if !manifest.has_secrets_key() {
        println!(
            "note: the backup holds no secrets key (the node kept it outside its data dir): start with the same --secrets-key FILE"
        );
    }
    Ok(())
}
