//! `model.safetensors.index.json`: which shard holds which tensor.

use super::json::{first_duplicate, JsonEntries};
use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::path::Path;

/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// A parsed, validated index.
#[derive(Debug, Clone)]
pub struct Index {
    /// The whole JSON object (kept so that extra keys survive a rewrite).
    pub json: Map<String, Value>,
    /// `(tensor, shard file)` in file order.
    pub weight_map: Vec<(String, String)>,
}

impl Index {
    /// Reads an index whose shards all exist next to it.
    pub fn read(path: &Path) -> Result<Index> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let index = Index::parse(&text, path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for (tensor, shard) in &index.weight_map {
            if !dir.join(shard).is_file() {
                return Err(Error::tensor(
                    path,
                    tensor,
                    format!(
                        "is mapped to shard {shard}, which does not exist in {}; the \
                         download is incomplete, fetch the missing shard",
                        dir.display()
                    ),
                ));
            }
        }
        Ok(index)
    }

    /// Parses the text of the index `path`: shard names must be plain
    /// `.safetensors` file names, which never collide with symprune's own
    /// files in an output (`sparsity.json`, journals, marker, temporary files).
    /// Never panics on any input.
    pub fn parse(text: &str, path: &Path) -> Result<Index> {
        let bad = |msg: String| Error::checkpoint(path, msg);
        let fix = "the index is corrupt; re-download it or regenerate it from the shards";
        let json: Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| bad(format!("is not a valid JSON object ({e}); {fix}")))?;
        // Parse weight_map a second time with duplicates kept (serde_json's
        // map keeps only the last of two equal keys).
        #[derive(serde::Deserialize)]
        struct Raw {
            weight_map: Option<JsonEntries>,
        }
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| bad(format!("weight_map is not a JSON object ({e}); {fix}")))?;
        let entries = raw
            .weight_map
            .ok_or_else(|| bad(format!("has no weight_map; {fix}")))?
            .0;
        if let Some(name) = first_duplicate(entries.iter().map(|(k, _)| k.as_str())) {
            return Err(Error::tensor(
                path,
                name,
                format!("is listed twice in weight_map; {fix}"),
            ));
        }
        let mut weight_map = Vec::with_capacity(entries.len());
        for (tensor, shard) in entries {
            let Value::String(shard) = shard else {
                return Err(Error::tensor(
                    path,
                    &tensor,
                    format!("weight_map value must be a shard file name; {fix}"),
                ));
            };
            let plain = Path::new(&shard).file_name().map(|f| f.to_string_lossy());
            if plain.as_deref() != Some(shard.as_str()) {
                return Err(Error::tensor(
                    path,
                    &tensor,
                    format!(
                        "shard {shard:?} is not a plain file name inside the checkpoint \
                         directory; {fix}"
                    ),
                ));
            }
            if !shard.ends_with(".safetensors") || shard.starts_with('.') {
                return Err(Error::tensor(
                    path,
                    &tensor,
                    format!(
                        "shard {shard:?} is not a visible .safetensors file name, so it could \
                         collide with the files symprune writes next to the shards \
                         (sparsity.json, its journal and marker); {fix}"
                    ),
                ));
            }
            weight_map.push((tensor, shard));
        }
        Ok(Index { json, weight_map })
    }

    /// The distinct shard files, sorted.
    pub fn shard_files(&self) -> Vec<&str> {
        let set: BTreeSet<&str> = self.weight_map.iter().map(|(_, s)| s.as_str()).collect();
        set.into_iter().collect()
    }

    /// The index as written next to the output: the same JSON with
    /// `metadata.total_size` set to `total_size` (the bytes of all tensors),
    /// keys sorted, two-space indent, as Hugging Face writes it.
    pub fn render(&self, total_size: u64) -> String {
        let mut json = self.json.clone();
        let meta = json
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        meta.as_object_mut()
            .expect("an object")
            .insert("total_size".into(), total_size.into());
        let mut text = serde_json::to_string_pretty(&Value::Object(json)).expect("JSON");
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(shard: &str) -> Result<Index> {
        let text = format!(r#"{{"weight_map":{{"w":{shard:?}}}}}"#);
        Index::parse(&text, Path::new(INDEX_FILE))
    }

    #[test]
    fn shard_names_are_plain_visible_safetensors_files() {
        assert_eq!(
            parse("a.safetensors").unwrap().shard_files(),
            ["a.safetensors"]
        );
        for bad in [
            "sparsity.json",
            ".symprune-journal.json",
            ".symprune-output",
            INDEX_FILE,
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("not a visible .safetensors file name"), "{e}");
        }
        for bad in ["../a.safetensors", "/a.safetensors", "a/b.safetensors", ""] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("not a plain file name"), "{e}");
        }
        assert!(parse(".a.safetensors").is_err());
    }
}
