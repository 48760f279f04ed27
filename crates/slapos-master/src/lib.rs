//! slapos-master
