//! The gRPC-Web front end (binary and text), to be built.

use http::{Request, Response};

use crate::body::Body;
use crate::gateway::{ConnInfo, Gateway};
use crate::status::{Code, Status};

/// Handles one gRPC-Web call.
pub(crate) async fn handle(
    _gateway: &Gateway,
    _request: Request<Body>,
    _conn: &ConnInfo,
) -> Response<Body> {
    Status::new(Code::Unimplemented, "gRPC-Web is not available yet").to_grpc_response()
}
