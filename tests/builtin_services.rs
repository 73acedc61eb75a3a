//! The gateway's own gRPC services on the main port: grpc.health.v1 for the
//! gateway and per routed service, and grpc.reflection (v1 and v1alpha) over
//! the loaded descriptor pool — what `grpcurl list` / `describe` use.

mod support;

use std::time::Duration;

use support::*;
use tokio_stream::StreamExt;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn reflect(addr: std::net::SocketAddr, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let outbound = tokio_stream::iter(vec![ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    }]);
    let mut responses = client.server_reflection_info(outbound).await.unwrap().into_inner();
    responses.next().await.unwrap().unwrap().message_response.unwrap()
}

#[tokio::test]
async fn reflection_lists_services_and_describes_a_method_without_proto_files() {
    let backend = Backend::start("b1").await;
    let gateway = start_gateway(&config_yaml(&[backend.addr], "", "")).await;
    let MessageResponse::ListServicesResponse(list) =
        reflect(gateway.addr, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a list response")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["testing.v1.Echo", "testing.rest.v1.Rest", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    let MessageResponse::FileDescriptorResponse(files) = reflect(
        gateway.addr,
        MessageRequest::FileContainingSymbol("testing.v1.Echo.Unary".into()),
    )
    .await
    else {
        panic!("not a file response")
    };
    use prost::Message;
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
    assert_eq!(file.name(), "testing/v1/echo.proto");
    let unary = &file.service[0].method[0];
    assert_eq!((unary.name(), unary.input_type()), ("Unary", ".testing.v1.EchoRequest"));
    assert_eq!(backend.calls(), 0, "reflection is answered by the gateway itself");
}

#[tokio::test]
async fn health_reports_the_gateway_and_each_routed_service() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let backend = Backend::start("b1").await;
    let gateway = start_gateway(&config_yaml(&[backend.addr], "", "")).await;
    let mut client = HealthClient::new(channel(gateway.addr).await);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let status = client.check(check("")).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);
    // Per service: SERVING while its upstream has an endpoint in service.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let status = client
        .check(check("testing.v1.Echo"))
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let unknown = client.check(check("nope.v1.Nothing")).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}
