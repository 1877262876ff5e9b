// The gossip tunables an agent runs with: cluster.profile (fast-lan or
// memberlist, see cluster/config.cc) with cluster.tuning's non-zero fields on
// top. Throws naming the field for a value the protocol cannot run with.
#pragma once

#include "cluster/config.h"
#include "schema/config.capnp.h"

namespace nodeagent::fleet {

cluster::Config gossipConfig(config::Config::Cluster::Reader cluster);

}  // namespace nodeagent::fleet
