//! Read models assembled from the store for the node's view of a computer
//! and for the JSON API. Built in one read transaction each.

use std::collections::HashMap;

use slapos_proto::marshal::Value;
use slapos_store::queries::{self as q, ComputerRow, InstanceRow, PartitionRow, SoftwareRow};
use slapos_store::Db;

use crate::engine::{self, decode_parameters};
use crate::error::Result;

/// Everything a node needs to converge one computer.
#[derive(Debug, Clone)]
pub struct ComputerView {
    pub reference: String,
    pub software: Vec<SoftwareRow>,
    pub partitions: Vec<PartitionView>,
}

#[derive(Debug, Clone)]
pub struct PartitionView {
    pub computer: String,
    pub partition: PartitionRow,
    pub instance: Option<InstanceView>,
}

#[derive(Debug, Clone)]
pub struct InstanceView {
    pub row: InstanceRow,
    /// Parameters as requested (typed).
    pub parameters: Vec<(String, Value)>,
    pub root_title: String,
    pub connection: Vec<(String, Option<String>)>,
    /// Shared instances this one hosts, in request order.
    pub shared: Vec<SharedView>,
}

#[derive(Debug, Clone)]
pub struct SharedView {
    pub row: InstanceRow,
    pub slave_reference: String,
    pub parameters: Vec<(String, Value)>,
}

/// Root titles by root id, fetched once per tree.
struct Roots(HashMap<i64, String>);

impl Roots {
    fn title(&mut self, db: &mut dyn Db, instance: &InstanceRow) -> Result<String> {
        if instance.tree_id == 0 {
            return Ok(instance.title.clone());
        }
        if let Some(t) = self.0.get(&instance.tree_id) {
            return Ok(t.clone());
        }
        let title = q::instance_by_id(db, instance.tree_id)?
            .map(|r| r.title)
            .unwrap_or_default();
        self.0.insert(instance.tree_id, title.clone());
        Ok(title)
    }

    fn slave_reference(&mut self, db: &mut dyn Db, shared: &InstanceRow) -> Result<String> {
        let root = if shared.tree_id == 0 {
            String::new()
        } else {
            self.title(db, shared)?
        };
        Ok(format!("{root}_{}", shared.title))
    }
}

fn instance_view(
    db: &mut dyn Db,
    roots: &mut Roots,
    row: InstanceRow,
    shared: Vec<InstanceRow>,
) -> Result<InstanceView> {
    let mut shared_views = Vec::with_capacity(shared.len());
    for s in shared {
        if s.requested_state == "destroyed" {
            continue;
        }
        shared_views.push(SharedView {
            slave_reference: roots.slave_reference(db, &s)?,
            parameters: decode_parameters(&s.parameters)?,
            row: s,
        });
    }
    Ok(InstanceView {
        parameters: decode_parameters(&row.parameters)?,
        root_title: roots.title(db, &row)?,
        connection: engine::connection_of(&row),
        shared: shared_views,
        row,
    })
}

/// The node's view of a computer. `None` if the computer is unknown.
pub fn computer_view(db: &mut dyn Db, reference: &str) -> Result<Option<ComputerView>> {
    let Some(computer) = q::computer_by_reference(db, reference)? else {
        return Ok(None);
    };
    computer_view_of(db, &computer).map(Some)
}

pub fn computer_view_of(db: &mut dyn Db, computer: &ComputerRow) -> Result<ComputerView> {
    let software = q::software_of(db, computer.id)?;
    let mut shared_by_host: HashMap<i64, Vec<InstanceRow>> = HashMap::new();
    for s in q::shared_on_computer(db, computer.id)? {
        if let Some(host) = s.host_id {
            shared_by_host.entry(host).or_default().push(s);
        }
    }
    let mut roots = Roots(HashMap::new());
    let mut partitions = Vec::new();
    for (partition, instance) in q::partitions_with_instances(db, computer.id)? {
        let instance = match instance {
            Some(row) => {
                let shared = shared_by_host.remove(&row.id).unwrap_or_default();
                Some(instance_view(db, &mut roots, row, shared)?)
            }
            None => None,
        };
        partitions.push(PartitionView {
            computer: computer.reference.clone(),
            partition,
            instance,
        });
    }
    Ok(ComputerView {
        reference: computer.reference.clone(),
        software,
        partitions,
    })
}

/// One partition as its instance sees it (`registerComputerPartition`).
pub fn partition_view(
    db: &mut dyn Db,
    computer_ref: &str,
    partition_ref: &str,
) -> Result<PartitionView> {
    let computer = engine::computer(db, computer_ref)?;
    let partition = engine::partition(db, &computer, partition_ref)?;
    let instance = match partition.instance_id {
        Some(_) => match q::instance_on_partition(db, partition.id)? {
            Some(row) => {
                let shared = q::shared_hosted_by(db, row.id)?;
                Some(instance_view(db, &mut Roots(HashMap::new()), row, shared)?)
            }
            None => None,
        },
        None => None,
    };
    Ok(PartitionView {
        computer: computer.reference,
        partition,
        instance,
    })
}
