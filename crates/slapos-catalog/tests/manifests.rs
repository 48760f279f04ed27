//! Every release of the catalog parses, has what a user needs (a service,
//! a promise, connection parameters), accepts its own defaults (or names
//! the parameters it requires) and refuses unknown parameters.

use std::collections::BTreeMap;

use slapos_release::{effective_parameters, validate_parameters, Manifest};

#[test]
fn every_release_parses_and_accepts_its_defaults() {
    for r in slapos_catalog::RELEASES {
        let m = Manifest::parse(r.manifest).unwrap_or_else(|e| panic!("{}: {e}", r.name));
        assert_eq!(m.name, r.name);
        let t = m
            .software_type("default")
            .unwrap_or_else(|| panic!("{} has a default type", r.name));
        assert!(
            !t.services.is_empty() && !t.promises.is_empty() && !t.connection.is_empty(),
            "{}",
            r.name
        );
        let schema = t
            .parameters
            .as_ref()
            .unwrap_or_else(|| panic!("{} has a parameter schema", r.name));
        let defaults = effective_parameters(&BTreeMap::new(), Some(schema)).unwrap();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        match (validate_parameters(&defaults, schema), required.first()) {
            (Ok(()), None) => {}
            (Err(e), Some(name)) => assert!(e.contains(name), "{}: {e}", r.name),
            (result, _) => panic!(
                "{}: defaults gave {result:?} with required {required:?}",
                r.name
            ),
        }
        let bad = effective_parameters(
            &BTreeMap::from([("no-such-parameter".to_string(), Some("1".to_string()))]),
            Some(schema),
        )
        .unwrap();
        assert!(
            validate_parameters(&bad, schema).is_err(),
            "{} refuses unknown parameters",
            r.name
        );
    }
}

#[test]
fn materialize_writes_file_urls() {
    let dir = tempfile::tempdir().unwrap();
    let urls = slapos_catalog::materialize(dir.path()).unwrap();
    assert_eq!(
        urls.len(),
        slapos_catalog::RELEASES.len() + slapos_catalog::ALIASES.len()
    );
    assert!(urls
        .iter()
        .any(|(n, u)| n == "mysql" && u.ends_with("mariadb/software.toml")));
    for (name, url) in urls {
        let path = url.strip_prefix("file://").unwrap();
        assert!(name == "mysql" || path.ends_with(&format!("{name}/software.toml")));
        assert!(std::fs::metadata(path).is_ok());
    }
}
