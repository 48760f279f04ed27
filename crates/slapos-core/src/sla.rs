use std::collections::BTreeMap;

/// Placement constraints of a request (the reference's `filter_kw`).
///
/// `computer_guid` pins a computer, `instance_guid` pins the host of a shared
/// instance; keys the reference uses for other purposes are kept but do not
/// constrain placement; every other key must equal the computer's parameter of
/// the same name (`country`, `hardware`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sla {
    pub entries: BTreeMap<String, String>,
}

/// Keys that travel in `filter_kw` without being computer attributes.
const NON_PLACEMENT_KEYS: &[&str] = &[
    "computer_guid",
    "instance_guid",
    "network_guid",
    "project_guid",
    "project_reference",
    "retention_delay",
    "master_url",
    "source_instance_id",
];

impl Sla {
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        Sla {
            entries: pairs.into_iter().collect(),
        }
    }

    pub fn computer_guid(&self) -> Option<&str> {
        self.entries
            .get("computer_guid")
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn instance_guid(&self) -> Option<&str> {
        self.entries
            .get("instance_guid")
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Constraints on computer attributes, in key order.
    pub fn attribute_constraints(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .filter(|(k, _)| !NON_PLACEMENT_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether a computer with these attributes satisfies the attribute constraints.
    pub fn matches_attributes(&self, attributes: &BTreeMap<String, String>) -> bool {
        self.attribute_constraints()
            .all(|(k, v)| attributes.get(k).map(String::as_str) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_constraints_skip_reserved_keys() {
        let sla = Sla::from_pairs([
            ("computer_guid".into(), "COMP-1".into()),
            ("country".into(), "fr".into()),
            ("retention_delay".into(), "3".into()),
        ]);
        assert_eq!(sla.computer_guid(), Some("COMP-1"));
        assert_eq!(
            sla.attribute_constraints().collect::<Vec<_>>(),
            vec![("country", "fr")]
        );
        let mut attrs = BTreeMap::new();
        assert!(!sla.matches_attributes(&attrs));
        attrs.insert("country".to_string(), "fr".to_string());
        assert!(sla.matches_attributes(&attrs));
        attrs.insert("country".to_string(), "de".to_string());
        assert!(!sla.matches_attributes(&attrs));
    }
}
