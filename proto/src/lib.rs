//! Agora's Protobuf contracts: generated tonic/prost code and the embedded
//! descriptor set (with source info and custom options) used for server
//! reflection and by the edge's transcoder.

pub mod codec;
pub mod rules;

/// The descriptor of the contracts' message `name` (`agora.users.v1.User`),
/// from the embedded descriptor set, read once.
pub fn message(name: &str) -> Option<prost_reflect::MessageDescriptor> {
    static POOL: std::sync::LazyLock<Option<prost_reflect::DescriptorPool>> =
        std::sync::LazyLock::new(|| {
            prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET).ok()
        });
    POOL.as_ref()?.get_message_by_name(name)
}

/// The encoded `FileDescriptorSet` of every contract and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/agora_descriptor.bin"));

pub mod analytics {
    pub mod v1 {
        tonic::include_proto!("agora.analytics.v1");
    }
}

pub mod api {
    pub mod v1 {
        tonic::include_proto!("agora.api.v1");
    }
}

pub mod catalog {
    pub mod v1 {
        tonic::include_proto!("agora.catalog.v1");
    }
}

pub mod chat {
    pub mod v1 {
        tonic::include_proto!("agora.chat.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("agora.events.v1");
    }
}

pub mod users {
    pub mod v1 {
        tonic::include_proto!("agora.users.v1");
    }
}

pub mod google {
    pub mod analytics {
        pub mod v1 {
            tonic::include_proto!("agora.analytics.v1");
        }
    }

    pub mod api {
        tonic::include_proto!("google.api");
    }
}
