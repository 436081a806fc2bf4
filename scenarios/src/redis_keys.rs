//! Removing a scenario's Redis keys: everything under its own prefix.

use crate::Result;

/// Connects to the test Redis.
pub async fn connect() -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{}", crate::REDIS_ADDR))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// Keys matching `<prefix>*`.
pub async fn keys(prefix: &str) -> Result<Vec<String>> {
    let mut c = connect().await?;
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(500)
            .query_async(&mut c)
            .await?;
        found.extend(batch);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

/// Deletes every key under `prefix`; returns how many.
pub async fn delete_prefix(prefix: &str) -> Result<usize> {
    let found = keys(prefix).await?;
    let mut c = connect().await?;
    for chunk in found.chunks(500) {
        let _: u64 = redis::cmd("DEL").arg(chunk).query_async(&mut c).await?;
    }
    Ok(found.len())
}
