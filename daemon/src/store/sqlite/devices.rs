//! Paired devices: one row per device id, holding its current client certificate.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::get_u64;
use crate::ca::Fingerprint;
use crate::model::Device;
use crate::store::StoreError;
use crate::store::encode::{PUT_DEVICE, RENEW_DEVICE, check_device, enc};

/// Stores `d`; a renewal (`renew`) keeps a stored device's `paired_at` and name.
pub(crate) fn put(conn: &Connection, d: &Device, renew: bool) -> Result<(), StoreError> {
    check_device(d)?;
    let sql = if renew { RENEW_DEVICE } else { PUT_DEVICE };
    conn.prepare_cached(&sql.replace('$', "?"))
        .and_then(|mut s| {
            s.execute(params![
                d.device_id,
                d.fingerprint.0,
                d.cert_der,
                enc(d.paired_at_ms),
                d.name
            ])
        })
        .map_err(StoreError::db("store a device"))?;
    Ok(())
}

pub(crate) fn delete(conn: &Connection, device_id: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM devices WHERE device_id = ?1")
        .and_then(|mut s| s.execute([device_id]))
        .map_err(StoreError::db("delete a device"))?;
    Ok(())
}

const COLUMNS: &str = "SELECT device_id, fingerprint, cert_der, paired_at, name FROM devices";

fn row(r: &Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        device_id: r.get(0)?,
        fingerprint: Fingerprint(r.get(1)?),
        cert_der: r.get(2)?,
        paired_at_ms: get_u64(r, 3)?,
        name: r.get(4)?,
    })
}

pub(crate) fn get(conn: &Connection, device_id: &str) -> Result<Option<Device>, StoreError> {
    conn.prepare_cached(&format!("{COLUMNS} WHERE device_id = ?1"))
        .and_then(|mut s| s.query_row([device_id], row).optional())
        .map_err(StoreError::db("read a device"))
}

pub(crate) fn by_fingerprint(
    conn: &Connection,
    fingerprint: &Fingerprint,
) -> Result<Option<Device>, StoreError> {
    conn.prepare_cached(&format!("{COLUMNS} WHERE fingerprint = ?1"))
        .and_then(|mut s| s.query_row([fingerprint.0], row).optional())
        .map_err(StoreError::db("read a device"))
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<Device>, StoreError> {
    conn.prepare_cached(&format!("{COLUMNS} ORDER BY device_id"))
        .and_then(|mut s| s.query_map([], row)?.collect())
        .map_err(StoreError::db("list devices"))
}
