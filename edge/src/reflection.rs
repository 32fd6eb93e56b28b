//! Reads an upstream's contracts through its gRPC server reflection
//! (`grpc.reflection.v1`), so the edge can front a service it was not
//! built with.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use agora_kit::balance::Balanced;
use prost::Message as _;
use prost_reflect::prost_types::FileDescriptorProto;
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

/// Services every gRPC server may offer that are not part of its contract.
const INFRASTRUCTURE: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// More files than any real contract has: a server answering with an
/// endless chain of imports is cut off.
const MAX_FILES: usize = 1000;

/// Every file an upstream's services are defined in, with their imports,
/// as an encoded `FileDescriptorSet` (options such as `google.api.http`
/// kept as the server sent them). Files are ordered by name, so the same
/// contracts give the same bytes.
pub async fn fetch(channel: Balanced, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    tokio::time::timeout(timeout, fetch_files(channel))
        .await
        .map_err(|_| anyhow::anyhow!("server reflection did not answer within {timeout:?}"))?
}

async fn fetch_files(channel: Balanced) -> anyhow::Result<Vec<u8>> {
    let (tx, rx) = mpsc::channel(4);
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("server reflection failed: {}", s.message()))?
        .into_inner();
    let mut ask = async |request: MessageRequest| -> anyhow::Result<MessageResponse> {
        tx.send(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        })
        .await
        .map_err(|_| anyhow::anyhow!("server reflection closed the stream"))?;
        let answer = answers
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("server reflection closed the stream"))?
            .map_err(|s| anyhow::anyhow!("server reflection failed: {}", s.message()))?;
        answer
            .message_response
            .ok_or_else(|| anyhow::anyhow!("server reflection sent an empty answer"))
    };

    let services = match ask(MessageRequest::ListServices(String::new())).await? {
        MessageResponse::ListServicesResponse(list) => list.service,
        other => anyhow::bail!("server reflection answered ListServices with {other:?}"),
    };
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut wanted: VecDeque<MessageRequest> = services
        .into_iter()
        .filter(|s| !INFRASTRUCTURE.contains(&s.name.as_str()))
        .map(|s| MessageRequest::FileContainingSymbol(s.name))
        .collect();
    while let Some(request) = wanted.pop_front() {
        let described = format!("{request:?}");
        let found = match ask(request).await? {
            MessageResponse::FileDescriptorResponse(found) => found.file_descriptor_proto,
            MessageResponse::ErrorResponse(e) => {
                anyhow::bail!("server reflection: {described}: {}", e.error_message)
            }
            other => anyhow::bail!("server reflection answered {described} with {other:?}"),
        };
        for bytes in found {
            let file = FileDescriptorProto::decode(bytes.as_slice())
                .map_err(|e| anyhow::anyhow!("server reflection sent an unreadable file: {e}"))?;
            let name = file.name().to_owned();
            if files.contains_key(&name) {
                continue;
            }
            // Servers may send a file's imports along or leave them to be
            // asked for; ask for those not seen yet.
            for import in file.dependency {
                if !files.contains_key(&import) {
                    wanted.push_back(MessageRequest::FileByFilename(import));
                }
            }
            files.insert(name, bytes);
            anyhow::ensure!(
                files.len() <= MAX_FILES,
                "server reflection sent more than {MAX_FILES} files"
            );
        }
    }
    drop(tx);
    Ok(encode_set(files.values()))
}

/// A `FileDescriptorSet` of already encoded files: field 1, repeated.
fn encode_set<'a>(files: impl Iterator<Item = &'a Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for file in files {
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(file.len() as u64, &mut out);
        out.extend_from_slice(file);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_set_decodes_to_the_same_files() {
        let set =
            prost_reflect::prost_types::FileDescriptorSet::decode(agora_proto::FILE_DESCRIPTOR_SET)
                .expect("contracts");
        let encoded: Vec<Vec<u8>> = set.file.iter().map(|f| f.encode_to_vec()).collect();
        let again = prost_reflect::prost_types::FileDescriptorSet::decode(
            encode_set(encoded.iter()).as_slice(),
        )
        .expect("decodes");
        assert_eq!(again, set);
    }
}
