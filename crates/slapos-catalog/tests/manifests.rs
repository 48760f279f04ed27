//! Every release of the catalog parses, has what a user needs (a service,
//! a promise, connection parameters) and accepts its own defaults.

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
        validate_parameters(&defaults, schema).unwrap_or_else(|e| panic!("{}: {e}", r.name));
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
    assert_eq!(urls.len(), slapos_catalog::RELEASES.len());
    for (name, url) in urls {
        let path = url.strip_prefix("file://").unwrap();
        assert!(path.ends_with(&format!("{name}/software.toml")));
        assert!(std::fs::metadata(path).is_ok());
    }
}
