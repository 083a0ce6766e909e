//! Where a disk's Linux root file system may be, from `sfdisk --json`.
//! The table comes from a node's disk, so every number is checked against
//! the disk's size and nothing here panics on odd input.

use serde_json::Value;

/// MBR partition types that hold a Linux file system.
const MBR_LINUX: &[&str] = &["83"];
/// GPT: "Linux root (x86-64)", tried first, then "Linux filesystem data".
const GPT_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const GPT_LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// More entries than any real table has (GPT's default is 128).
const MAX_PARTITIONS: usize = 256;

/// A byte range of the disk that may hold a root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// 1-based position in the table, for messages.
    pub number: usize,
    pub offset: u64,
    pub bytes: u64,
    /// The table's type field, for messages.
    pub kind: String,
}

/// What the table says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// "dos" or "gpt".
    pub label: String,
    /// Linux partitions, most likely root first.
    pub linux: Vec<Candidate>,
    /// Every partition's type, for an error that says what the disk holds.
    pub kinds: Vec<String>,
}

/// Parses `sfdisk --json` output for a disk of `disk_bytes`. Partitions
/// that do not fit the disk are an error (a damaged or hostile table must
/// not make us mount past the end); unknown fields are ignored.
pub fn parse(json: &str, disk_bytes: u64) -> Result<Table, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("sfdisk output: {e}"))?;
    let t = v
        .get("partitiontable")
        .ok_or("sfdisk output has no partitiontable")?;
    let label = t
        .get("label")
        .and_then(Value::as_str)
        .ok_or("partition table without a label")?
        .to_string();
    if label != "dos" && label != "gpt" {
        return Err(format!(
            "{label} partition tables are not supported (dos, gpt)"
        ));
    }
    // sfdisk reports in sectors of the disk's logical size (512 for a file).
    let sector = match t.get("sectorsize") {
        None => 512,
        Some(s) => s
            .as_u64()
            .filter(|s| s.is_power_of_two() && (512..=4096).contains(s))
            .ok_or("sector size is not 512 to 4096")?,
    };
    let parts = match t.get("partitions") {
        None => &Vec::new(),
        Some(p) => p.as_array().ok_or("partitions is not a list")?,
    };
    if parts.len() > MAX_PARTITIONS {
        return Err(format!("{} partitions: too many", parts.len()));
    }
    let mut table = Table {
        label,
        linux: Vec::new(),
        kinds: Vec::new(),
    };
    let mut root_first = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let number = i + 1;
        let kind = p
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("partition {number} has no type"))?
            .to_string();
        let start = p.get("start").and_then(Value::as_u64);
        let size = p.get("size").and_then(Value::as_u64);
        let (Some(start), Some(size)) = (start, size) else {
            return Err(format!("partition {number} has no start or size"));
        };
        let range = start
            .checked_mul(sector)
            .zip(size.checked_mul(sector))
            .filter(|(off, len)| {
                *len > 0 && off.checked_add(*len).is_some_and(|e| e <= disk_bytes)
            });
        let Some((offset, bytes)) = range else {
            return Err(format!(
                "partition {number} (sectors {start}+{size}) does not fit the {disk_bytes}-byte disk"
            ));
        };
        table.kinds.push(kind.clone());
        let c = Candidate {
            number,
            offset,
            bytes,
            kind: kind.clone(),
        };
        let k = kind.to_ascii_uppercase();
        if k == GPT_ROOT_X86_64 {
            root_first.push(c);
        } else if k == GPT_LINUX_DATA || MBR_LINUX.contains(&kind.to_ascii_lowercase().as_str()) {
            table.linux.push(c);
        }
    }
    root_first.append(&mut table.linux);
    table.linux = root_first;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// What `bootd image build` makes (sfdisk 2.38's output for it).
    const BUILT: &str = r#"{
       "partitiontable": {
          "label": "dos",
          "id": "0x5eb0a9b1",
          "device": "disk.raw",
          "unit": "sectors",
          "sectorsize": 512,
          "partitions": [
             {"node": "disk.raw1", "start": 2048, "size": 131072, "type": "ef"},
             {"node": "disk.raw2", "start": 133120, "size": 8255488, "bootable": true, "type": "83"}
          ]
       }
    }"#;

    #[test]
    fn the_built_layout() {
        let t = parse(BUILT, 4 * GIB).expect("parses");
        assert_eq!(t.label, "dos");
        assert_eq!(t.kinds, ["ef", "83"]);
        assert_eq!(
            t.linux,
            [Candidate {
                number: 2,
                offset: 133120 * 512,
                bytes: 8255488 * 512,
                kind: "83".into()
            }]
        );
    }

    #[test]
    fn gpt_root_type_comes_first() {
        let json = format!(
            r#"{{"partitiontable": {{"label": "gpt", "unit": "sectors", "partitions": [
              {{"start": 2048, "size": 2048, "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"}},
              {{"start": 4096, "size": 2048, "type": "{GPT_LINUX_DATA}"}},
              {{"start": 6144, "size": 2048, "type": "{}"}}
            ]}}}}"#,
            GPT_ROOT_X86_64.to_lowercase()
        );
        let t = parse(&json, GIB).expect("parses");
        assert_eq!(t.linux.iter().map(|c| c.number).collect::<Vec<_>>(), [3, 2]);
    }

    #[test]
    fn windows_has_no_linux_partition() {
        let json = r#"{"partitiontable": {"label": "gpt", "partitions": [
            {"start": 2048, "size": 2048, "type": "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"},
            {"start": 4096, "size": 8192, "type": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"}]}}"#;
        let t = parse(json, GIB).expect("parses");
        assert!(t.linux.is_empty());
        assert_eq!(t.kinds.len(), 2);
    }

    #[test]
    fn odd_tables_are_errors_not_panics() {
        let disk = 8 * 1024 * 512;
        for bad in [
            "",
            "null",
            "[]",
            r#"{"partitiontable": 1}"#,
            r#"{"partitiontable": {}}"#,
            r#"{"partitiontable": {"label": "sun", "partitions": []}}"#,
            r#"{"partitiontable": {"label": "dos", "partitions": {}}}"#,
            r#"{"partitiontable": {"label": "dos", "sectorsize": 0, "partitions": []}}"#,
            r#"{"partitiontable": {"label": "dos", "sectorsize": 513, "partitions": []}}"#,
            // Past the end, zero-sized, overflowing, negative, missing fields.
            r#"{"partitiontable": {"label": "dos", "partitions": [{"start": 8000, "size": 1000, "type": "83"}]}}"#,
            r#"{"partitiontable": {"label": "dos", "partitions": [{"start": 1, "size": 0, "type": "83"}]}}"#,
            r#"{"partitiontable": {"label": "dos", "partitions": [{"start": 18446744073709551615, "size": 1, "type": "83"}]}}"#,
            r#"{"partitiontable": {"label": "dos", "partitions": [{"start": 36028797018963968, "size": 1, "type": "83"}]}}"#,
            r#"{"partitiontable": {"label": "dos", "partitions": [{"start": -1, "size": 1, "type": "83"}]}}"#,
            r#"{"partitiontable": {"label": "dos", "partitions": [{"start": 1, "type": "83"}]}}"#,
            r#"{"partitiontable": {"label": "dos", "partitions": [{"start": 1, "size": 1}]}}"#,
            r#"{"partitiontable": {"label": "dos", "partitions": [{"start": 1.5, "size": 1, "type": "83"}]}}"#,
        ] {
            assert!(parse(bad, disk).is_err(), "{bad}");
        }
        let many = format!(
            r#"{{"partitiontable": {{"label": "gpt", "partitions": [{}]}}}}"#,
            vec![r#"{"start": 1, "size": 1, "type": "83"}"#; MAX_PARTITIONS + 1].join(",")
        );
        assert!(parse(&many, disk).is_err());
        // Exactly to the end fits; no partitions at all is an empty table.
        let full = r#"{"partitiontable": {"label": "dos", "partitions": [{"start": 2048, "size": 6144, "type": "83"}]}}"#;
        assert_eq!(parse(full, disk).map(|t| t.linux.len()), Ok(1));
        let empty = r#"{"partitiontable": {"label": "dos"}}"#;
        assert_eq!(parse(empty, disk).map(|t| t.linux.len()), Ok(0));
    }

    /// Bytes from a simple generator: whatever they are, parse returns.
    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000usize {
            let mut s =
                String::from(r#"{"partitiontable": {"label": "dos", "partitions": [{"start": "#);
            for _ in 0..len % 40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let alphabet = b"0123456789,{}[]\":-e. abtypesiz";
                s.push(char::from(alphabet[(x % alphabet.len() as u64) as usize]));
            }
            let _ = parse(&s, x);
        }
    }
}
