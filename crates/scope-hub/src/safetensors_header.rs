//! A check of a safetensors file's header that models and SAEs both need before handing the
//! bytes to the `safetensors` crate.

/// A tensor whose header entry ends past the file's data section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorPastEnd {
    /// The tensor's name in the header.
    pub name: String,
    /// The end offset the header gives it.
    pub end: u64,
    /// The bytes the data section holds.
    pub data_len: u64,
}

/// The first tensor of the safetensors `bytes` that ends past the data section, if any.
/// `safetensors` adds the header length to the last tensor's end offset unchecked, which
/// panics on overflow for offsets near 2^64: callers check every end offset first. A header
/// that does not parse is left to `safetensors` to report.
pub fn tensor_past_end(bytes: &[u8]) -> Option<TensorPastEnd> {
    let n = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)?;
    let data_len = (bytes.len() as u64).saturating_sub(8).saturating_sub(n);
    let header = usize::try_from(n)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))?;
    let Ok(serde_json::Value::Object(header)) = serde_json::from_slice(header) else {
        return None;
    };
    header.into_iter().find_map(|(name, info)| {
        let end = info
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(serde_json::Value::as_u64)?;
        (end > data_len).then_some(TensorPastEnd {
            name,
            end,
            data_len,
        })
    })
}
