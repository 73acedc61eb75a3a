//! The demo order service and a way to run it on a loopback port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::pb::order_service_server::{OrderService, OrderServiceServer};
use super::pb::{
    ChatMessage, CreateOrderRequest, GetOrderRequest, ImportOrdersResponse, ListOrdersRequest, ListOrdersResponse,
    Order, OrderEvent, OrderState, UpdateOrderRequest, WatchOrderRequest,
};

/// An in-memory order book that signs every answer with its replica name.
#[derive(Clone)]
pub struct OrderDesk {
    replica: Arc<str>,
    orders: Arc<Mutex<BTreeMap<String, Order>>>,
}

impl OrderDesk {
    /// A desk with three sample orders.
    pub fn new(replica: &str) -> Self {
        let mut orders = BTreeMap::new();
        // Fixed times (from 2026-01-15T09:30:00Z, a day apart), so answers
        // are the same on every run and every replica.
        const FIRST_ORDER_SECS: u64 = 1_768_469_400;
        for (id, item, state) in [
            (1, "espresso beans", OrderState::Shipped),
            (2, "grinder", OrderState::Placed),
            (3, "kettle", OrderState::Delivered),
        ] {
            let placed = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(FIRST_ORDER_SECS + (id - 1) * 86_400);
            let name = format!("orders/{id}");
            orders.insert(
                name.clone(),
                Order {
                    name,
                    item: item.into(),
                    quantity: 1,
                    state: state as i32,
                    create_time: Some(placed.into()),
                    served_by: String::new(),
                },
            );
        }
        Self {
            replica: Arc::from(replica),
            orders: Arc::new(Mutex::new(orders)),
        }
    }

    /// The tonic service for this desk.
    pub fn into_server(self) -> OrderServiceServer<Self> {
        OrderServiceServer::new(self)
    }

    fn orders(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<String, Order>>, Status> {
        self.orders.lock().map_err(|_| Status::internal("order book poisoned"))
    }
}

/// Applies `x-demo-delay-ms` and `x-demo-fail` from request metadata.
async fn faults(metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
    let get = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(ms) = get("x-demo-delay-ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    if let Some(code) = get("x-demo-fail").and_then(|v| v.parse::<i32>().ok())
        && code != 0
    {
        return Err(Status::new(tonic::Code::from(code), "failure requested by x-demo-fail"));
    }
    Ok(())
}

type EventStream = Pin<Box<dyn Stream<Item = Result<OrderEvent, Status>> + Send>>;
type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatMessage, Status>> + Send>>;

#[tonic::async_trait]
impl OrderService for OrderDesk {
    async fn get_order(&self, request: Request<GetOrderRequest>) -> Result<Response<Order>, Status> {
        faults(request.metadata()).await?;
        let name = &request.get_ref().name;
        let mut order = self
            .orders()?
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no order named \"{name}\"")))?;
        order.served_by = self.replica.to_string();
        Ok(Response::new(order))
    }

    async fn list_orders(&self, request: Request<ListOrdersRequest>) -> Result<Response<ListOrdersResponse>, Status> {
        faults(request.metadata()).await?;
        let wanted = request.get_ref().state;
        let limit = match request.get_ref().page_size {
            n if n > 0 => n as usize,
            _ => usize::MAX,
        };
        let orders = self
            .orders()?
            .values()
            .filter(|o| wanted == 0 || o.state == wanted)
            .take(limit)
            .cloned()
            .collect();
        Ok(Response::new(ListOrdersResponse {
            orders,
            served_by: self.replica.to_string(),
        }))
    }

    async fn create_order(&self, request: Request<CreateOrderRequest>) -> Result<Response<Order>, Status> {
        faults(request.metadata()).await?;
        let mut order = request.into_inner().order.unwrap_or_default();
        if order.item.trim().is_empty() {
            return Err(Status::invalid_argument("order.item must not be empty"));
        }
        let mut orders = self.orders()?;
        order.name = format!("orders/{}", orders.len() + 1);
        order.state = OrderState::Placed as i32;
        order.quantity = order.quantity.max(1);
        order.create_time = Some(SystemTime::now().into());
        orders.insert(order.name.clone(), order.clone());
        order.served_by = self.replica.to_string();
        Ok(Response::new(order))
    }

    async fn update_order(&self, request: Request<UpdateOrderRequest>) -> Result<Response<Order>, Status> {
        faults(request.metadata()).await?;
        let request = request.into_inner();
        let change = request.order.unwrap_or_default();
        let paths = request.update_mask.map(|mask| mask.paths).unwrap_or_default();
        if let Some(unknown) = paths.iter().find(|p| !matches!(p.as_str(), "item" | "quantity")) {
            return Err(Status::invalid_argument(format!(
                "update_mask: \"{unknown}\" cannot be changed (only item and quantity)"
            )));
        }
        let named = |field: &str| paths.iter().any(|p| p == field);
        let (item, quantity) = if paths.is_empty() {
            (!change.item.is_empty(), change.quantity != 0)
        } else {
            (named("item"), named("quantity"))
        };
        if item && change.item.trim().is_empty() {
            return Err(Status::invalid_argument("order.item must not be empty"));
        }
        let mut orders = self.orders()?;
        let order = orders
            .get_mut(&change.name)
            .ok_or_else(|| Status::not_found(format!("no order named \"{}\"", change.name)))?;
        if item {
            order.item = change.item;
        }
        if quantity {
            order.quantity = change.quantity.max(1);
        }
        let mut order = order.clone();
        order.served_by = self.replica.to_string();
        Ok(Response::new(order))
    }

    type WatchOrderStream = EventStream;

    async fn watch_order(&self, request: Request<WatchOrderRequest>) -> Result<Response<EventStream>, Status> {
        faults(request.metadata()).await?;
        let request = request.into_inner();
        let interval = Duration::from_millis(match request.interval_ms {
            0 => 200,
            ms => u64::from(ms).min(10_000),
        });
        let replica = self.replica.clone();
        let name = request.name;
        let states = [
            OrderState::Placed,
            OrderState::Packed,
            OrderState::Shipped,
            OrderState::Delivered,
        ];
        let stream = tokio_stream::iter(states).then(move |state| {
            let replica = replica.clone();
            let name = name.clone();
            async move {
                tokio::time::sleep(interval).await;
                Ok(OrderEvent {
                    name,
                    state: state as i32,
                    time: Some(SystemTime::now().into()),
                    served_by: replica.to_string(),
                })
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn import_orders(
        &self,
        request: Request<Streaming<Order>>,
    ) -> Result<Response<ImportOrdersResponse>, Status> {
        faults(request.metadata()).await?;
        let mut stream = request.into_inner();
        let mut imported = 0;
        while let Some(order) = stream.next().await {
            let mut order = order?;
            let mut orders = self.orders()?;
            order.name = format!("orders/{}", orders.len() + 1);
            orders.insert(order.name.clone(), order);
            imported += 1;
        }
        Ok(Response::new(ImportOrdersResponse {
            imported,
            served_by: self.replica.to_string(),
        }))
    }

    type ChatStream = ChatStream;

    async fn chat(&self, request: Request<Streaming<ChatMessage>>) -> Result<Response<ChatStream>, Status> {
        faults(request.metadata()).await?;
        let replica = self.replica.clone();
        let stream = request.into_inner().map(move |message| {
            message.map(|m| ChatMessage {
                text: format!("desk heard: {}", m.text),
                served_by: replica.to_string(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A demo replica serving on a loopback port.
pub struct Backend {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Binds `addr` (port 0 picks one) and serves an `OrderDesk` named `replica`.
    pub async fn spawn(addr: SocketAddr, replica: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(OrderDesk::new(replica).into_server())
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            });
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "demo backend stopped with an error");
            }
        });
        Ok(Self { addr, stop, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops gracefully (GOAWAY, calls in flight finish).
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
